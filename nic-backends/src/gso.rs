//! Segmentation and coalescing of TCP/UDP super-packets at the TUN boundary (`IFF_VNET_HDR`):
//! the `virtio_net_hdr` in front of each packet, checksum completion, TSO/USO segmentation of
//! what the kernel hands us, and GRO-style coalescing of what we hand the kernel. Pure byte
//! work over IP packets (no link header), no I/O.

use std::collections::VecDeque;

use crate::buffer::{Buffer, Pool};

/// `sizeof(struct virtio_net_hdr)`.
pub const VNET_HDR_LEN: usize = 10;
/// `VIRTIO_NET_HDR_F_NEEDS_CSUM`.
pub const F_NEEDS_CSUM: u8 = 1;
/// `VIRTIO_NET_HDR_GSO_TCPV4`.
pub const GSO_TCPV4: u8 = 1;
/// `VIRTIO_NET_HDR_GSO_TCPV6`.
pub const GSO_TCPV6: u8 = 4;
/// `VIRTIO_NET_HDR_GSO_UDP_L4`.
pub const GSO_UDP_L4: u8 = 5;
/// Most packets merged into one super-packet.
pub const MAX_COALESCE: usize = 64;

/// A `virtio_net_hdr` (little-endian fields, as the kernel writes them on little-endian hosts
/// and for `TUNSETVNETLE`-less TUN devices there).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VnetHdr {
    /// `F_NEEDS_CSUM`...
    pub flags: u8,
    /// `GSO_*`, 0 for none (the ECN bit 0x80 is kept in it).
    pub gso_type: u8,
    /// Length of the headers (IP + L4).
    pub hdr_len: u16,
    /// Payload bytes per segment.
    pub gso_size: u16,
    /// Where checksumming starts.
    pub csum_start: u16,
    /// Where, from `csum_start`, the checksum is stored.
    pub csum_offset: u16,
}

impl VnetHdr {
    /// Parse the first 10 bytes.
    pub fn parse(b: &[u8]) -> Option<VnetHdr> {
        let b = b.get(..VNET_HDR_LEN)?;
        let u = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
        Some(VnetHdr {
            flags: b[0],
            gso_type: b[1],
            hdr_len: u(2),
            gso_size: u(4),
            csum_start: u(6),
            csum_offset: u(8),
        })
    }
    /// The 10 bytes.
    pub fn bytes(&self) -> [u8; VNET_HDR_LEN] {
        let mut b = [0u8; VNET_HDR_LEN];
        b[0] = self.flags;
        b[1] = self.gso_type;
        b[2..4].copy_from_slice(&self.hdr_len.to_le_bytes());
        b[4..6].copy_from_slice(&self.gso_size.to_le_bytes());
        b[6..8].copy_from_slice(&self.csum_start.to_le_bytes());
        b[8..10].copy_from_slice(&self.csum_offset.to_le_bytes());
        b
    }
}

/// Ones'-complement sum of `data` (16-bit big-endian words) added to `sum`, folded to at most
/// 16 bits (so callers may add a few more values to it without overflow). Sums 32-bit words
/// eight bytes at a time: the ones'-complement sum is the same whatever the word width, once
/// folded.
pub fn sum16(sum: u32, data: &[u8]) -> u32 {
    let mut acc = u64::from(sum);
    let mut it = data.chunks_exact(8);
    for c in &mut it {
        let w = u64::from_be_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
        acc += (w >> 32) + (w & 0xffff_ffff);
    }
    let mut rest = it.remainder().chunks_exact(2);
    for w in &mut rest {
        acc += u64::from(u16::from_be_bytes([w[0], w[1]]));
    }
    if let [b] = rest.remainder() {
        acc += u64::from(*b) << 8;
    }
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u32
}

/// Fold a 32-bit sum to 16 bits (not complemented).
pub fn fold(mut sum: u32) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// The pseudo-header sum for `pkt` (IPv4 or IPv6, no extension headers) with L4 length `l4len`.
fn pseudo(pkt: &[u8], proto: u8, l4len: usize) -> u32 {
    if pkt[0] >> 4 == 4 {
        let s = sum16(0, &pkt[12..20]);
        s + u32::from(proto) + l4len as u32
    } else {
        let s = sum16(0, &pkt[8..40]);
        s + (l4len as u32 >> 16) + (l4len as u32 & 0xffff) + u32::from(proto)
    }
}

/// Complete a partial checksum (`F_NEEDS_CSUM`): the field at `start + offset` holds the
/// pseudo-header sum; the checksum covers `start..`. False if the offsets do not fit.
pub fn complete_csum(pkt: &mut [u8], start: usize, offset: usize) -> bool {
    let at = start.saturating_add(offset);
    if start >= pkt.len() || at.saturating_add(2) > pkt.len() {
        return false;
    }
    let c = !fold(sum16(0, &pkt[start..]));
    pkt[at..at + 2].copy_from_slice(&c.to_be_bytes());
    true
}

/// IPv4 header checksum (the field zeroed first).
pub fn ipv4_header_csum(h: &mut [u8]) {
    h[10] = 0;
    h[11] = 0;
    let c = !fold(sum16(0, h));
    h[10..12].copy_from_slice(&c.to_be_bytes());
}

/// Where a packet's L4 header is and what it is: `(ip header length, protocol)` for IPv4
/// without fragmentation and IPv6 without extension headers.
fn l4(pkt: &[u8]) -> Option<(usize, u8)> {
    match pkt.first()? >> 4 {
        4 if pkt.len() >= 20 => {
            let hl = usize::from(pkt[0] & 0x0f) * 4;
            let frag = u16::from_be_bytes([pkt[6], pkt[7]]) & 0x3fff;
            (hl >= 20 && pkt.len() >= hl && frag == 0).then_some((hl, pkt[9]))
        }
        6 if pkt.len() >= 40 => Some((40, pkt[6])),
        _ => None,
    }
}

/// Why a super-packet could not be segmented.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SegError {
    /// Not the IPv4/IPv6 TCP or UDP the header says, bad lengths, or segments too large.
    Malformed,
    /// The pool ran dry (the segments made so far are dropped).
    PoolDry,
}

/// Split `pkt` (a TSO/USO super-packet as `h` describes it) into packets of at most
/// `gso_size` payload bytes, each in a fresh buffer at `HEADROOM`, with lengths, IPv4
/// identification and header checksum, TCP sequence numbers and flags, and L4 checksums
/// complete. Returns the number of segments pushed to `out`.
pub fn segment(pkt: &[u8], h: &VnetHdr, pool: &Pool, out: &mut VecDeque<Buffer>) -> Result<usize, SegError> {
    let (iphl, proto) = l4(pkt).ok_or(SegError::Malformed)?;
    let v4 = pkt[0] >> 4 == 4;
    let kind = h.gso_type & 0x7f;
    let tcp = match (kind, proto) {
        (GSO_TCPV4, 6) if v4 => true,
        (GSO_TCPV6, 6) if !v4 => true,
        (GSO_UDP_L4, 17) => false,
        _ => return Err(SegError::Malformed),
    };
    let l4hl = if tcp { usize::from(*pkt.get(iphl + 12).ok_or(SegError::Malformed)? >> 4) * 4 } else { 8 };
    let hlen = iphl + l4hl;
    let mss = usize::from(h.gso_size);
    if (tcp && l4hl < 20) || hlen > pkt.len() || mss == 0 || hlen + mss > crate::buffer::MAX_DATA {
        return Err(SegError::Malformed);
    }
    let payload = &pkt[hlen..];
    let nseg = payload.len().div_ceil(mss).max(1);
    let id0 = u16::from_be_bytes([pkt[4], pkt[5]]);
    let seq0 = if tcp { u32::from_be_bytes([pkt[iphl + 4], pkt[iphl + 5], pkt[iphl + 6], pkt[iphl + 7]]) } else { 0 };
    let flags0 = if tcp { pkt[iphl + 13] } else { 0 };
    let start = out.len();
    for i in 0..nseg {
        let chunk = &payload[(i * mss).min(payload.len())..((i + 1) * mss).min(payload.len())];
        let Some(mut b) = pool.alloc() else {
            out.truncate(start);
            return Err(SegError::PoolDry);
        };
        let len = hlen + chunk.len();
        let room = b.data_and_tailroom_mut();
        room[..hlen].copy_from_slice(&pkt[..hlen]);
        room[hlen..len].copy_from_slice(chunk);
        let s = &mut room[..len];
        if v4 {
            s[2..4].copy_from_slice(&(len as u16).to_be_bytes());
            if tcp || nseg > 1 {
                s[4..6].copy_from_slice(&id0.wrapping_add(i as u16).to_be_bytes());
            }
            ipv4_header_csum(&mut s[..iphl]);
        } else {
            s[4..6].copy_from_slice(&((len - 40) as u16).to_be_bytes());
        }
        let l4len = len - iphl;
        let csum_at = if tcp {
            s[iphl + 4..iphl + 8].copy_from_slice(&seq0.wrapping_add((i * mss) as u32).to_be_bytes());
            let mut f = flags0;
            if i + 1 < nseg {
                f &= !(0x01 | 0x08); // FIN, PSH only on the last segment
            }
            if i > 0 {
                f &= !0x80; // CWR only on the first
            }
            s[iphl + 13] = f;
            iphl + 16
        } else {
            s[iphl + 4..iphl + 6].copy_from_slice(&(l4len as u16).to_be_bytes());
            iphl + 6
        };
        s[csum_at] = 0;
        s[csum_at + 1] = 0;
        let mut c = !fold(sum16(pseudo(s, proto, l4len), &s[iphl..]));
        if !tcp && c == 0 {
            c = 0xffff;
        }
        s[csum_at..csum_at + 2].copy_from_slice(&c.to_be_bytes());
        if b.set_len(len).is_err() {
            out.truncate(start);
            return Err(SegError::Malformed);
        }
        out.push_back(b);
    }
    Ok(nseg)
}

/// A TCP packet that may start or join a coalesced super-packet: its IP header length, TCP
/// header length, payload length and sequence number.
#[derive(Debug, Clone, Copy)]
pub struct TcpSeg {
    iphl: usize,
    thl: usize,
    payload: usize,
    seq: u32,
    flags: u8,
}

/// Whether `pkt` is a plain TCP data segment (ACK, maybe PSH, with payload) over IPv4 without
/// options/fragmentation or IPv6 without extension headers.
pub fn tcp_seg(pkt: &[u8]) -> Option<TcpSeg> {
    let (iphl, proto) = l4(pkt)?;
    if proto != 6 || (pkt[0] >> 4 == 4 && iphl != 20) {
        return None;
    }
    let t = pkt.get(iphl..iphl + 20)?;
    let thl = usize::from(t[12] >> 4) * 4;
    let iplen = if pkt[0] >> 4 == 4 {
        usize::from(u16::from_be_bytes([pkt[2], pkt[3]]))
    } else {
        40 + usize::from(u16::from_be_bytes([pkt[4], pkt[5]]))
    };
    if thl < 20 || iplen != pkt.len() || iphl + thl >= pkt.len() {
        return None;
    }
    let flags = t[13];
    if flags & !(0x10 | 0x08) != 0 || flags & 0x10 == 0 {
        return None;
    }
    Some(TcpSeg {
        iphl,
        thl,
        payload: pkt.len() - iphl - thl,
        seq: u32::from_be_bytes([t[4], t[5], t[6], t[7]]),
        flags,
    })
}

/// Whether `next` continues the super-packet that starts with `first` and currently ends with
/// `last` (same flow, header and options, acknowledgement, in-order sequence; every packet but
/// the last carries exactly `first`'s payload length, and nothing follows a PSH).
pub fn continues(first: (&[u8], TcpSeg), last: TcpSeg, next: (&[u8], TcpSeg), total: usize) -> bool {
    let ((f, fs), ls, (n, ns)) = (first, last, next);
    if ls.payload != fs.payload || ls.flags & 0x08 != 0 || ns.payload > fs.payload {
        return false;
    }
    if ns.iphl != fs.iphl || ns.thl != fs.thl || ls.seq.wrapping_add(ls.payload as u32) != ns.seq {
        return false;
    }
    if total + ns.payload > 65535 {
        return false;
    }
    let (hl, th) = (fs.iphl, fs.thl);
    let same_ip = if f[0] >> 4 == 4 {
        f[0] == n[0] && f[1] == n[1] && f[6] & 0x40 == n[6] & 0x40 && f[8] == n[8] && f[12..20] == n[12..20]
    } else {
        f[0..4] == n[0..4] && f[7] == n[7] && f[8..40] == n[8..40]
    };
    // Ports, ack, header length byte, window and options identical; flags ACK or ACK|PSH.
    same_ip
        && f[hl..hl + 4] == n[hl..hl + 4]
        && f[hl + 8..hl + 13] == n[hl + 8..hl + 13]
        && f[hl + 14..hl + 16] == n[hl + 14..hl + 16]
        && f[hl + 20..hl + th] == n[hl + 20..hl + th]
}

/// Turn `first` (in place) into the header of a super-packet of `total` bytes whose segments
/// carry `mss` payload bytes: lengths, IPv4 header checksum, PSH if the last segment had it, and
/// the TCP checksum field set to the pseudo-header sum (the kernel completes it:
/// `F_NEEDS_CSUM`). Returns the `virtio_net_hdr` to write before it.
pub fn merge_header(first: &mut [u8], fs: TcpSeg, total: usize, mss: usize, psh: bool) -> VnetHdr {
    let v4 = first[0] >> 4 == 4;
    let hl = fs.iphl;
    if v4 {
        first[2..4].copy_from_slice(&(total as u16).to_be_bytes());
        ipv4_header_csum(&mut first[..hl]);
    } else {
        first[4..6].copy_from_slice(&((total - 40) as u16).to_be_bytes());
    }
    if psh {
        first[hl + 13] |= 0x08;
    }
    let p = fold(pseudo(first, 6, total - hl));
    first[hl + 16..hl + 18].copy_from_slice(&p.to_be_bytes());
    VnetHdr {
        flags: F_NEEDS_CSUM,
        gso_type: if v4 { GSO_TCPV4 } else { GSO_TCPV6 },
        hdr_len: (hl + fs.thl) as u16,
        gso_size: mss as u16,
        csum_start: hl as u16,
        csum_offset: 16,
    }
}

/// The payload of a coalescible segment (after its headers).
pub fn payload(pkt: &[u8], s: TcpSeg) -> &[u8] {
    &pkt[s.iphl + s.thl..]
}

/// Its payload length.
pub fn payload_len(s: TcpSeg) -> usize {
    s.payload
}

/// Its flags byte.
pub fn flags(s: TcpSeg) -> u8 {
    s.flags
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An IPv4 or IPv6 TCP packet with `payload` bytes of a pattern starting at `seq`.
    pub(crate) fn tcp_packet(v6: bool, seq: u32, flags: u8, payload: &[u8]) -> Vec<u8> {
        let mut p = if v6 {
            let mut h = vec![0u8; 40];
            h[0] = 0x60;
            h[4..6].copy_from_slice(&((20 + payload.len()) as u16).to_be_bytes());
            h[6] = 6;
            h[7] = 64;
            h[8..24].copy_from_slice(&[0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
            h[24..40].copy_from_slice(&[0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
            h
        } else {
            let mut h = vec![0u8; 20];
            h[0] = 0x45;
            h[2..4].copy_from_slice(&((40 + payload.len()) as u16).to_be_bytes());
            h[6] = 0x40;
            h[8] = 64;
            h[9] = 6;
            h[12..16].copy_from_slice(&[10, 0, 0, 1]);
            h[16..20].copy_from_slice(&[10, 0, 0, 2]);
            ipv4_header_csum(&mut h);
            h
        };
        let hl = p.len();
        p.extend_from_slice(&[0x30, 0x39, 0x00, 0x50]);
        p.extend_from_slice(&seq.to_be_bytes());
        p.extend_from_slice(&7u32.to_be_bytes());
        p.extend_from_slice(&[0x50, flags, 0x01, 0x00, 0, 0, 0, 0]);
        p.extend_from_slice(payload);
        let l4 = p.len() - hl;
        let c = !fold(sum16(pseudo(&p, 6, l4), &p[hl..]));
        p[hl + 16..hl + 18].copy_from_slice(&c.to_be_bytes());
        p
    }

    fn l4_csum_ok(p: &[u8]) -> bool {
        let (hl, proto) = l4(p).unwrap();
        fold(sum16(pseudo(p, proto, p.len() - hl), &p[hl..])) == 0xffff
    }

    #[test]
    fn tso_super_packets_become_mss_segments_with_valid_checksums() {
        for v6 in [false, true] {
            let data: Vec<u8> = (0..5000u32).map(|i| (i * 31 % 253) as u8).collect();
            let sp = tcp_packet(v6, 1000, 0x18, &data); // ACK|PSH
            let hl = if v6 { 40 } else { 20 };
            let h = VnetHdr { gso_type: if v6 { GSO_TCPV6 } else { GSO_TCPV4 }, gso_size: 1360, ..Default::default() };
            let pool = Pool::new("t", 16).unwrap();
            let mut out = VecDeque::new();
            assert_eq!(segment(&sp, &h, &pool, &mut out), Ok(4));
            let mut got = Vec::new();
            for (i, b) in out.iter().enumerate() {
                let d = b.data();
                assert!(l4_csum_ok(d), "segment {i} TCP checksum");
                if !v6 {
                    assert_eq!(fold(sum16(0, &d[..20])), 0xffff, "IPv4 header checksum");
                    assert_eq!(u16::from_be_bytes([d[2], d[3]]) as usize, d.len());
                } else {
                    assert_eq!(u16::from_be_bytes([d[4], d[5]]) as usize, d.len() - 40);
                }
                let seq = u32::from_be_bytes([d[hl + 4], d[hl + 5], d[hl + 6], d[hl + 7]]);
                assert_eq!(seq, 1000 + (i as u32) * 1360);
                assert_eq!(d[hl + 13] & 0x08 != 0, i == 3, "PSH only on the last");
                got.extend_from_slice(&d[hl + 20..]);
            }
            assert_eq!(got, data);
        }
    }

    #[test]
    fn coalesced_segments_are_what_segmentation_splits_back() {
        for v6 in [false, true] {
            let data: Vec<u8> = (0..4000u32).map(|i| (i * 13 % 251) as u8).collect();
            let pkts: Vec<Vec<u8>> = data
                .chunks(1000)
                .enumerate()
                .map(|(i, c)| {
                    let mut p = tcp_packet(v6, 5000 + 1000 * i as u32, if i == 3 { 0x18 } else { 0x10 }, c);
                    if !v6 {
                        // Consecutive IPv4 identifications, as segmentation gives them.
                        p[4..6].copy_from_slice(&(i as u16).to_be_bytes());
                        ipv4_header_csum(&mut p[..20]);
                    }
                    p
                })
                .collect();
            let segs: Vec<TcpSeg> = pkts.iter().map(|p| tcp_seg(p).unwrap()).collect();
            let mut total = pkts[0].len();
            for i in 1..4 {
                assert!(continues((&pkts[0], segs[0]), segs[i - 1], (&pkts[i], segs[i]), total));
                total += segs[i].payload;
            }
            // Out of order, or another flow, does not continue.
            assert!(!continues((&pkts[0], segs[0]), segs[0], (&pkts[2], segs[2]), total));
            let mut other = pkts[1].clone();
            other[if v6 { 40 } else { 20 }] ^= 1;
            let os = tcp_seg(&other).unwrap();
            assert!(!continues((&pkts[0], segs[0]), segs[0], (&other, os), total));
            // Merge, then split the way the kernel would.
            let mut first = pkts[0].clone();
            let vh = merge_header(&mut first, segs[0], total, 1000, true);
            let mut sp = first.clone();
            for i in 1..4 {
                sp.extend_from_slice(payload(&pkts[i], segs[i]));
            }
            assert_eq!(sp.len(), total);
            assert_eq!(vh.gso_size, 1000);
            // The kernel completes the checksum of the whole super-packet from the partial sum.
            let mut whole = sp.clone();
            assert!(complete_csum(&mut whole, usize::from(vh.csum_start), usize::from(vh.csum_offset)));
            assert!(l4_csum_ok(&whole));
            let pool = Pool::new("t", 8).unwrap();
            let mut out = VecDeque::new();
            assert_eq!(segment(&sp, &vh, &pool, &mut out), Ok(4));
            for (b, p) in out.iter().zip(&pkts) {
                assert!(b.data() == &p[..], "segment equals the original packet");
            }
        }
    }

    #[test]
    fn wide_sum_equals_the_16_bit_sum() {
        let reference = |sum: u32, d: &[u8]| -> u16 {
            let mut s = u64::from(sum);
            for w in d.chunks(2) {
                s += u64::from(u16::from_be_bytes([w[0], *w.get(1).unwrap_or(&0)]));
            }
            while s > 0xffff {
                s = (s & 0xffff) + (s >> 16);
            }
            s as u16
        };
        let data: Vec<u8> = (0..3001u32).map(|i| (i.wrapping_mul(2654435761) >> 7) as u8).collect();
        for len in [0, 1, 2, 7, 8, 9, 15, 16, 17, 1499, 3000, 3001] {
            for start in [0, 0xffff, 0x1fffe] {
                assert_eq!(fold(sum16(start, &data[..len])), reference(start, &data[..len]), "len {len}");
            }
        }
        assert_eq!(fold(sum16(0, &[0xff; 64])), 0xffff);
    }

    #[test]
    fn bad_super_packets_are_errors() {
        let pool = Pool::new("t", 2).unwrap();
        let mut out = VecDeque::new();
        let sp = tcp_packet(false, 0, 0x10, &[0u8; 3000]);
        let h = VnetHdr { gso_type: GSO_TCPV6, gso_size: 1000, ..Default::default() };
        assert_eq!(segment(&sp, &h, &pool, &mut out), Err(SegError::Malformed), "v4 packet, v6 type");
        let h = VnetHdr { gso_type: GSO_TCPV4, gso_size: 0, ..Default::default() };
        assert_eq!(segment(&sp, &h, &pool, &mut out), Err(SegError::Malformed));
        let h = VnetHdr { gso_type: GSO_TCPV4, gso_size: 1000, ..Default::default() };
        assert_eq!(segment(&sp, &h, &pool, &mut out), Err(SegError::PoolDry), "3 segments, 2 buffers");
        assert!(out.is_empty() && pool.available() == 2);
        assert_eq!(segment(&sp[..30], &h, &pool, &mut out), Err(SegError::Malformed));
        assert!(!complete_csum(&mut [0u8; 4], 2, 2));
    }
}
