//! PCI configuration space: the capability list, walked over a byte array (no device needed).

/// Offset of the capabilities pointer in the configuration header.
pub const CAP_PTR: usize = 0x34;
/// Status register; bit 4 says the capability list exists.
pub const STATUS: usize = 0x06;
/// Command register: bit 1 memory space, bit 2 bus master.
pub const COMMAND: usize = 0x04;
/// Command: memory space enable.
pub const CMD_MEMORY: u16 = 1 << 1;
/// Command: bus master enable.
pub const CMD_BUS_MASTER: u16 = 1 << 2;
/// Command: INTx disable.
pub const CMD_INTX_DISABLE: u16 = 1 << 10;
/// Capability id of a vendor-specific capability (virtio uses them).
pub const CAP_VENDOR: u8 = 0x09;
/// Capability id of MSI-X.
pub const CAP_MSIX: u8 = 0x11;

/// One entry of the capability list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Capability {
    /// Capability id (`CAP_VENDOR`, `CAP_MSIX`, ...).
    pub id: u8,
    /// Its offset in configuration space.
    pub offset: usize,
    /// Its bytes from `offset` to the end of the 256-byte header (vendor caps carry their length
    /// at byte 2; callers read what they need, bounds-checked).
    pub bytes: Vec<u8>,
}

impl Capability {
    /// Byte `i` of the capability, if inside the config space read.
    pub fn u8_at(&self, i: usize) -> Option<u8> {
        self.bytes.get(i).copied()
    }
    /// Little-endian u32 at `i`.
    pub fn u32_at(&self, i: usize) -> Option<u32> {
        let b = self.bytes.get(i..i + 4)?;
        Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
}

/// Walk the capability list of a configuration space image (at least the 64-byte header;
/// normally the first 256 bytes). Pointers out of range, misaligned, or into the header end the
/// walk; a loop is cut after 48 entries (the most that fit in 256 bytes). Never panics.
pub fn capabilities(cfg: &[u8]) -> Vec<Capability> {
    let mut out = Vec::new();
    let has_list = cfg.get(STATUS).is_some_and(|s| s & 0x10 != 0);
    if !has_list {
        return out;
    }
    let mut p = cfg.get(CAP_PTR).map_or(0, |&p| p as usize & !3);
    let mut seen = 0;
    while p >= 0x40 && p + 2 <= cfg.len() && seen < 48 {
        let id = cfg[p];
        let next = cfg[p + 1] as usize & !3;
        out.push(Capability { id, offset: p, bytes: cfg[p..].to_vec() });
        p = next;
        seen += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg_with(caps: &[(usize, u8, u8, &[u8])]) -> Vec<u8> {
        let mut c = vec![0u8; 256];
        c[STATUS] = 0x10;
        c[CAP_PTR] = caps.first().map_or(0, |c| c.0 as u8);
        for &(off, id, next, body) in caps {
            c[off] = id;
            c[off + 1] = next;
            c[off + 2..off + 2 + body.len()].copy_from_slice(body);
        }
        c
    }

    #[test]
    fn walks_vendor_and_msix_caps_in_order() {
        let c = cfg_with(&[
            (0x84, CAP_VENDOR, 0x70, &[16, 1, 4]),
            (0x70, CAP_MSIX, 0x40, &[]),
            (0x40, CAP_VENDOR, 0, &[20, 2]),
        ]);
        let caps = capabilities(&c);
        assert_eq!(caps.iter().map(|c| (c.id, c.offset)).collect::<Vec<_>>(), vec![(9, 0x84), (0x11, 0x70), (9, 0x40)]);
        assert_eq!(caps[0].u8_at(3), Some(1));
        assert_eq!(caps[0].u8_at(4), Some(4));
        assert_eq!(caps[2].u8_at(2), Some(20));
        assert_eq!(caps[0].u32_at(254), None, "past the end is None, not a panic");
    }

    #[test]
    fn no_list_bit_loops_and_bad_pointers_end_the_walk() {
        let mut c = cfg_with(&[(0x40, CAP_VENDOR, 0x40, &[])]);
        assert_eq!(capabilities(&c).len(), 48, "a self-loop is cut");
        c[STATUS] = 0;
        assert!(capabilities(&c).is_empty(), "status says there is no list");
        let c = cfg_with(&[(0x40, CAP_VENDOR, 0x10, &[])]);
        assert_eq!(capabilities(&c).len(), 1, "a pointer into the header ends the walk");
        let short = vec![0u8; 8];
        assert!(capabilities(&short).is_empty());
        let mut c = vec![0u8; 0x42];
        c[STATUS] = 0x10;
        c[CAP_PTR] = 0xfc;
        assert!(capabilities(&c).is_empty(), "pointer past the image");
    }
}
