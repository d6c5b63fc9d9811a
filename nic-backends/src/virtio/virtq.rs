//! A split virtqueue, driver side (virtio 1.1/1.2 §2.7 "Split Virtqueues").
//!
//! ```text
//! ring memory (RingMem, DMA-mapped, IOVA-contiguous)
//! 0            descriptor table   16 * N   (§2.7.5: le64 addr, le32 len, le16 flags, le16 next)
//! avail_off    available ring     6 + 2N   (§2.7.6: le16 flags, le16 idx, le16 ring[N], le16 used_event)
//! used_off     used ring          6 + 8N   (§2.7.8: le16 flags, le16 idx, {le32 id, le32 len}[N], le16 avail_event)
//! ```
//! Ownership: a descriptor chain belongs to the device from the moment its head is made visible
//! by the avail->idx store until the device returns its head id in the used ring. The driver keeps
//! the [`Buffer`] of each chain in `token[head]` meanwhile and never touches its bytes; it takes it
//! back only after reading the used entry (Acquire). Ids and lengths from the device are checked:
//! a bad one is counted, never trusted, never used as an index unchecked.

use std::sync::atomic::{fence, Ordering};

use crate::buffer::Buffer;
use crate::sys::ring::RingMem;

/// Descriptor flag: continues via `next` (§2.7.5).
pub(crate) const VIRTQ_DESC_F_NEXT: u16 = 1;
/// Descriptor flag: device-writable (§2.7.5).
pub(crate) const VIRTQ_DESC_F_WRITE: u16 = 2;
/// Avail flag: no interrupt wanted (we poll) (§2.7.7).
const VIRTQ_AVAIL_F_NO_INTERRUPT: u16 = 1;
/// Used flag: the device does not want notifications (§2.7.10).
const VIRTQ_USED_F_NO_NOTIFY: u16 = 1;

/// Largest queue this driver uses.
pub(crate) const MAX_QUEUE: u16 = 256;

/// One segment of a chain: device address, length, device-writable.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Seg {
    pub iova: u64,
    pub len: u32,
    pub write: bool,
}

/// Bytes of ring memory a queue of `n` entries needs, and the offsets of its avail and used rings
/// (used ring 4 KiB aligned; the spec asks for 4, page alignment keeps it off the avail ring's lines).
pub(crate) fn layout(n: u16) -> (usize, usize, usize) {
    let n = n as usize;
    let avail = 16 * n;
    let used = (avail + 6 + 2 * n).next_multiple_of(4096);
    let total = (used + 6 + 8 * n).next_multiple_of(4096);
    (total, avail, used)
}

/// A completed chain returned by the device.
pub(crate) struct Used {
    pub token: Option<Buffer>,
    /// Bytes the device says it wrote.
    pub len: u32,
    /// Bytes of device-writable space the chain offered.
    pub writable: u32,
}

/// Driver-side state of one split virtqueue.
pub(crate) struct Virtq {
    mem: RingMem,
    n: u16,
    avail_off: usize,
    used_off: usize,
    /// Free descriptor ids.
    free: Vec<u16>,
    /// Per head id: the chain's length (0: not in flight), its buffer, its writable bytes.
    chain_len: Vec<u16>,
    token: Vec<Option<Buffer>>,
    writable: Vec<u32>,
    /// Shadow of each descriptor's `next` (we never read back what the device can see).
    next: Vec<u16>,
    /// Next avail->idx to publish, and the last published.
    avail_idx: u16,
    published: u16,
    last_used: u16,
    /// Used entries with an id the device must not have returned (out of range / not in flight).
    pub bad_used_id: u64,
    /// The device advanced used->idx by more than the queue size (a broken device).
    pub bad_used_idx: u64,
    /// Used lengths larger than the writable space posted.
    pub bad_used_len: u64,
}

impl Virtq {
    /// A queue of `n` entries (a power of two ≤ 32768) on `mem` (at least `layout(n).0` bytes),
    /// zeroed, with interrupts suppressed.
    pub(crate) fn new(mem: RingMem, n: u16) -> Option<Virtq> {
        let (total, avail_off, used_off) = layout(n);
        if !n.is_power_of_two() || n > 32768 || mem.len() < total {
            return None;
        }
        mem.zero();
        // §2.7.7: with VIRTIO_F_EVENT_IDX not negotiated, the driver sets NO_INTERRUPT to ask the
        // device not to interrupt: we poll.
        mem.write_u16(avail_off, VIRTQ_AVAIL_F_NO_INTERRUPT);
        let n_us = n as usize;
        Some(Virtq {
            mem,
            n,
            avail_off,
            used_off,
            free: (0..n).rev().collect(),
            chain_len: vec![0; n_us],
            token: (0..n_us).map(|_| None).collect(),
            writable: vec![0; n_us],
            next: vec![0; n_us],
            avail_idx: 0,
            published: 0,
            last_used: 0,
            bad_used_id: 0,
            bad_used_idx: 0,
            bad_used_len: 0,
        })
    }

    pub(crate) fn size(&self) -> u16 {
        self.n
    }
    /// Device addresses of the descriptor table, avail ring (driver area) and used ring (device area).
    pub(crate) fn addresses(&self) -> (u64, u64, u64) {
        let b = self.mem.iova();
        (b, b + self.avail_off as u64, b + self.used_off as u64)
    }
    /// Descriptors free.
    pub(crate) fn free_descs(&self) -> usize {
        self.free.len()
    }
    /// Chains in flight (posted, not yet returned).
    pub(crate) fn in_flight(&self) -> usize {
        self.n as usize - self.free.len()
    }

    /// Add a chain (not yet visible to the device: see [`publish`](Self::publish)). `token` is
    /// held until the device returns the chain. Gives the token back if there are not enough free
    /// descriptors or `segs` is empty. The caller has bounds-checked every `iova` (§2.7.13.1).
    pub(crate) fn push(&mut self, segs: &[Seg], token: Option<Buffer>) -> Result<(), Option<Buffer>> {
        if segs.is_empty() || segs.len() > self.free.len() {
            return Err(token);
        }
        let ids: Vec<u16> = (0..segs.len()).filter_map(|_| self.free.pop()).collect();
        let mut writable = 0u32;
        for (i, (s, &id)) in segs.iter().zip(&ids).enumerate() {
            let more = i + 1 < ids.len();
            let next = if more { ids[i + 1] } else { 0 };
            let flags = if s.write { VIRTQ_DESC_F_WRITE } else { 0 } | if more { VIRTQ_DESC_F_NEXT } else { 0 };
            // §2.7.13.1 "Placing Buffers Into The Descriptor Table".
            let d = 16 * id as usize;
            self.mem.write_u64(d, s.iova);
            self.mem.write_u32(d + 8, s.len);
            self.mem.write_u16(d + 12, flags);
            self.mem.write_u16(d + 14, next);
            self.next[id as usize] = next;
            if s.write {
                writable = writable.saturating_add(s.len);
            }
        }
        let head = ids[0];
        self.chain_len[head as usize] = ids.len() as u16;
        self.token[head as usize] = token;
        self.writable[head as usize] = writable;
        // §2.7.13.2 "Updating The Available Ring": ring[avail_idx % N] = head.
        let slot = (self.avail_idx & (self.n - 1)) as usize;
        self.mem.write_u16(self.avail_off + 4 + 2 * slot, head);
        self.avail_idx = self.avail_idx.wrapping_add(1);
        Ok(())
    }

    /// Make the added chains visible to the device; true if the device wants a notification.
    pub(crate) fn publish(&mut self) -> bool {
        if self.avail_idx == self.published {
            return false;
        }
        // §2.7.13.3 "Updating idx": "The driver performs a suitable memory barrier to ensure the
        // device sees the updated descriptor table and available ring before the next step."
        fence(Ordering::Release);
        self.mem.write_u16(self.avail_off + 2, self.avail_idx);
        self.published = self.avail_idx;
        // §2.7.13.4 "Notifying The Device": "The driver MUST perform a suitable memory barrier
        // before reading flags or avail_event, to avoid missing a notification." (a full barrier:
        // the idx store must be visible before the flags load).
        fence(Ordering::SeqCst);
        self.mem.read_u16(self.used_off) & VIRTQ_USED_F_NO_NOTIFY == 0
    }

    /// Take up to `max` chains the device has returned (§2.7.14 "Receiving Used Buffers From The
    /// Device"). Bad entries are counted and skipped; if the device claims more entries than the
    /// queue holds, nothing is taken and `bad_used_idx` counts it (the watchdog reports it).
    pub(crate) fn pop_used(&mut self, max: usize, out: &mut Vec<Used>) -> usize {
        let used_idx = self.mem.read_u16(self.used_off + 2);
        // Read the entries only after seeing idx: pairs with the device's write barrier before
        // its idx update (§2.7.8, §2.7.14).
        fence(Ordering::Acquire);
        let pending = used_idx.wrapping_sub(self.last_used);
        if pending > self.n {
            self.bad_used_idx += 1;
            return 0;
        }
        let mut got = 0;
        while got < max && self.last_used != used_idx {
            let slot = (self.last_used & (self.n - 1)) as usize;
            let e = self.used_off + 4 + 8 * slot;
            let id = self.mem.read_u32(e);
            let len = self.mem.read_u32(e + 4);
            self.last_used = self.last_used.wrapping_add(1);
            let Some(head) = u16::try_from(id).ok().filter(|&h| h < self.n && self.chain_len[h as usize] > 0) else {
                self.bad_used_id += 1;
                continue;
            };
            let h = head as usize;
            let token = self.token[h].take();
            let writable = self.writable[h];
            let mut id = head;
            for _ in 0..self.chain_len[h] {
                self.free.push(id);
                id = self.next[id as usize];
            }
            self.chain_len[h] = 0;
            if len > writable {
                self.bad_used_len += 1;
            }
            out.push(Used { token, len, writable });
            got += 1;
        }
        got
    }

    /// Give back every buffer still posted (after the device was reset: it no longer owns them).
    #[cfg(any(test, feature = "fuzzing"))]
    pub(crate) fn drain_after_reset(&mut self) -> Vec<Buffer> {
        let mut v = Vec::new();
        for h in 0..self.n as usize {
            if self.chain_len[h] > 0 {
                self.chain_len[h] = 0;
                if let Some(b) = self.token[h].take() {
                    v.push(b);
                }
            }
        }
        v
    }

    /// Test hook support (feature `test-hooks`): overwrite the address (and, if given, the
    /// length) of the descriptor at the head of the most recently added chain (used only by the
    /// bad-IOVA test hook, after the chain was pushed and before it is published).
    #[cfg(any(test, feature = "test-hooks"))]
    pub(crate) fn poison_last(&mut self, iova: u64, len: Option<u32>) {
        let slot = (self.avail_idx.wrapping_sub(1) & (self.n - 1)) as usize;
        let head = self.mem.read_u16(self.avail_off + 4 + 2 * slot);
        if head < self.n {
            self.mem.write_u64(16 * head as usize, iova);
            if let Some(len) = len {
                self.mem.write_u32(16 * head as usize + 8, len);
            }
        }
    }

    /// Whether the chain with head `head` is posted (in flight: the device owns its buffers).
    #[cfg(any(test, feature = "fuzzing"))]
    pub(crate) fn posted(&self, head: u16) -> bool {
        self.chain_len.get(head as usize).is_some_and(|&n| n > 0)
    }

    /// The ring memory (for the simulated device in tests).
    #[cfg(any(test, feature = "fuzzing"))]
    pub(crate) fn mem(&self) -> &RingMem {
        &self.mem
    }
    #[cfg(any(test, feature = "fuzzing"))]
    pub(crate) fn offsets(&self) -> (usize, usize) {
        (self.avail_off, self.used_off)
    }
}

/// A simulated device playing the other side of a split ring on the same memory (tests only).
#[cfg(any(test, feature = "fuzzing"))]
pub(crate) mod sim {
    use super::*;

    pub(crate) struct SimDevice {
        pub mem: RingMem,
        pub n: u16,
        pub avail_off: usize,
        pub used_off: usize,
        pub last_avail: u16,
        pub used_idx: u16,
    }

    /// A descriptor chain as the device sees it.
    #[derive(Debug, Clone)]
    pub(crate) struct Chain {
        pub head: u16,
        pub segs: Vec<(u64, u32, u16)>,
    }

    impl SimDevice {
        pub(crate) fn new(q: &Virtq) -> Self {
            let (avail_off, used_off) = q.offsets();
            SimDevice { mem: q.mem().clone(), n: q.size(), avail_off, used_off, last_avail: 0, used_idx: 0 }
        }
        pub(crate) fn set_no_notify(&self, on: bool) {
            self.mem.write_u16(self.used_off, u16::from(on));
        }
        /// Chains the driver has published and the device has not taken yet.
        pub(crate) fn take_avail(&mut self) -> Vec<Chain> {
            let idx = self.mem.read_u16(self.avail_off + 2);
            fence(Ordering::Acquire);
            let mut v = Vec::new();
            while self.last_avail != idx {
                let head = self.mem.read_u16(self.avail_off + 4 + 2 * (self.last_avail & (self.n - 1)) as usize);
                self.last_avail = self.last_avail.wrapping_add(1);
                let mut segs = Vec::new();
                let mut id = head;
                loop {
                    let d = 16 * id as usize;
                    let flags = self.mem.read_u16(d + 12);
                    segs.push((self.mem.read_u64(d), self.mem.read_u32(d + 8), flags));
                    if flags & VIRTQ_DESC_F_NEXT == 0 || segs.len() > self.n as usize {
                        break;
                    }
                    id = self.mem.read_u16(d + 14);
                }
                v.push(Chain { head, segs });
            }
            v
        }
        /// Write a used entry (raw id and len, possibly bogus) without publishing it.
        pub(crate) fn put_used(&mut self, id: u32, len: u32) {
            let e = self.used_off + 4 + 8 * (self.used_idx & (self.n - 1)) as usize;
            self.mem.write_u32(e, id);
            self.mem.write_u32(e + 4, len);
            self.used_idx = self.used_idx.wrapping_add(1);
        }
        pub(crate) fn publish_used(&self) {
            fence(Ordering::Release);
            self.mem.write_u16(self.used_off + 2, self.used_idx);
        }
        /// Force used->idx (a broken device).
        pub(crate) fn set_used_idx(&mut self, idx: u16) {
            self.used_idx = idx;
            self.publish_used();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::sim::SimDevice;
    use super::*;
    use crate::buffer::Pool;
    use crate::sys::ring::SharedMem;
    use crate::MmapRegion;
    use std::sync::Arc;

    fn queue(n: u16) -> Virtq {
        let region: Arc<dyn SharedMem> = Arc::new(MmapRegion::new(layout(n).0).unwrap());
        Virtq::new(RingMem::new(region, 0, layout(n).0).unwrap(), n).unwrap()
    }

    fn seg(b: &Buffer, write: bool) -> Seg {
        Seg { iova: b.iova(), len: 100, write }
    }

    #[test]
    fn layout_and_bad_sizes() {
        assert_eq!(layout(256), (12288, 4096, 8192));
        let region: Arc<dyn SharedMem> = Arc::new(MmapRegion::new(4096).unwrap());
        assert!(Virtq::new(RingMem::new(region.clone(), 0, 4096).unwrap(), 256).is_none(), "memory too small");
        assert!(Virtq::new(RingMem::new(region, 0, 4096).unwrap(), 3).is_none(), "not a power of two");
    }

    #[test]
    fn post_complete_wraps_around_many_times() {
        let pool = Pool::new("t", 64).unwrap();
        let mut q = queue(8);
        let mut dev = SimDevice::new(&q);
        let mut out = Vec::new();
        let mut sent = 0u64;
        let mut seen = 0u64;
        for round in 0..100u32 {
            // Fill the ring completely, every round: ids and ring slots wrap many times.
            while q.free_descs() > 0 {
                let mut b = pool.alloc().unwrap();
                b.append(8).unwrap().copy_from_slice(&sent.to_be_bytes());
                let s = seg(&b, true);
                q.push(&[s], Some(b)).unwrap();
                sent += 1;
            }
            let extra = pool.alloc().unwrap();
            assert!(q.push(&[seg(&extra, true)], Some(extra)).is_err(), "full ring refuses");
            assert!(q.publish(), "device wants notifications");
            assert!(!q.publish(), "nothing new");
            let chains = dev.take_avail();
            assert_eq!(chains.len(), 8);
            for c in &chains {
                assert_eq!(c.segs.len(), 1);
                assert_eq!(c.segs[0].2, VIRTQ_DESC_F_WRITE);
                dev.put_used(c.head as u32, 60 + round % 40);
            }
            dev.publish_used();
            assert_eq!(q.pop_used(3, &mut out), 3, "max honoured");
            assert_eq!(q.pop_used(64, &mut out), 5);
            assert_eq!(q.in_flight(), 0);
            for u in out.drain(..) {
                let b = u.token.as_ref().unwrap();
                assert_eq!(b.data(), &seen.to_be_bytes(), "in order");
                assert_eq!(u.writable, 100);
                seen += 1;
            }
        }
        assert_eq!(seen, 800);
        assert_eq!((q.bad_used_id, q.bad_used_idx, q.bad_used_len), (0, 0, 0));
        assert_eq!(pool.available(), 64);
    }

    #[test]
    fn no_notify_is_honoured() {
        let pool = Pool::new("t", 4).unwrap();
        let mut q = queue(4);
        let dev = SimDevice::new(&q);
        dev.set_no_notify(true);
        let b = pool.alloc().unwrap();
        q.push(&[seg(&b, false)], Some(b)).unwrap();
        assert!(!q.publish());
        dev.set_no_notify(false);
        let b = pool.alloc().unwrap();
        q.push(&[seg(&b, false)], Some(b)).unwrap();
        assert!(q.publish());
    }

    #[test]
    fn chains_link_and_free_all_their_descriptors() {
        let mut q = queue(4);
        let mut dev = SimDevice::new(&q);
        let segs = [Seg { iova: 0x1000, len: 4, write: false }, Seg { iova: 0x2000, len: 1, write: true }];
        q.push(&segs, None).unwrap();
        q.push(&segs, None).unwrap();
        assert!(q.push(&segs, None).is_err(), "2 + 2 of 4 used");
        q.publish();
        let c = dev.take_avail();
        assert_eq!(c[0].segs, vec![(0x1000, 4, VIRTQ_DESC_F_NEXT), (0x2000, 1, VIRTQ_DESC_F_WRITE)]);
        dev.put_used(c[1].head as u32, 1);
        dev.publish_used();
        let mut out = Vec::new();
        assert_eq!(q.pop_used(8, &mut out), 1);
        assert_eq!(out[0].writable, 1);
        assert_eq!(q.free_descs(), 2);
        q.push(&segs, None).unwrap();
    }

    #[test]
    fn bad_ids_lengths_and_indices_from_the_device_are_counted() {
        let pool = Pool::new("t", 8).unwrap();
        let mut q = queue(8);
        let mut dev = SimDevice::new(&q);
        for _ in 0..2 {
            let b = pool.alloc().unwrap();
            q.push(&[seg(&b, true)], Some(b)).unwrap();
        }
        q.publish();
        let c = dev.take_avail();
        dev.put_used(1000, 10); // out of range
        dev.put_used(u32::MAX, 10);
        dev.put_used(3, 10); // in range, never posted
        dev.put_used(c[0].head as u32, 5000); // longer than posted
        dev.put_used(c[0].head as u32, 10); // returned twice
        dev.publish_used();
        let mut out = Vec::new();
        assert_eq!(q.pop_used(16, &mut out), 1);
        assert_eq!((q.bad_used_id, q.bad_used_len), (4, 1));
        assert_eq!(out[0].len, 5000, "reported; the caller drops it (longer than writable)");
        assert_eq!(q.in_flight(), 1);
        // A device that jumps used->idx by more than the ring: nothing is taken.
        dev.set_used_idx(dev.used_idx.wrapping_add(100));
        assert_eq!(q.pop_used(16, &mut out), 0);
        assert_eq!(q.bad_used_idx, 1);
        let left = q.drain_after_reset();
        assert_eq!(left.len(), 1);
        drop((out, left));
        assert_eq!(pool.available(), 8);
    }
}
