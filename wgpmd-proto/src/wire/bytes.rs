//! Bounds-checked byte access shared by every view: the reason no view can panic.
//!
//! Reads of bytes that are not there return zero (or an empty slice) and writes to them are
//! dropped. On a view that passed `check_len` every access is in range, so these fallbacks never
//! fire; on a view made with `new_unchecked` over a short buffer they turn what would be an
//! out-of-bounds panic into a harmless wrong value. The checks are the same bounds checks that
//! slice indexing performs, so this costs nothing over `data[range]`.

use core::ops::{Range, RangeFrom};

/// A field: a byte range inside a header.
pub(crate) type Field = Range<usize>;
/// Everything from an offset to the end of the buffer.
pub(crate) type Rest = RangeFrom<usize>;

/// The byte at `i`, or 0.
#[inline]
pub(crate) fn u8_at(d: &[u8], i: usize) -> u8 {
    d.get(i).copied().unwrap_or(0)
}

/// The `N` bytes of `f`, or zeros when `f` is not `N` bytes inside `d`.
#[inline]
pub(crate) fn array<const N: usize>(d: &[u8], f: Field) -> [u8; N] {
    d.get(f).and_then(|s| <[u8; N]>::try_from(s).ok()).unwrap_or([0; N])
}

/// Big-endian u16 at `f`.
#[inline]
pub(crate) fn be16(d: &[u8], f: Field) -> u16 {
    u16::from_be_bytes(array(d, f))
}

/// Big-endian u32 at `f`.
#[inline]
pub(crate) fn be32(d: &[u8], f: Field) -> u32 {
    u32::from_be_bytes(array(d, f))
}

/// Little-endian u32 at `f`.
#[inline]
pub(crate) fn le32(d: &[u8], f: Field) -> u32 {
    u32::from_le_bytes(array(d, f))
}

/// Little-endian u64 at `f`.
#[inline]
pub(crate) fn le64(d: &[u8], f: Field) -> u64 {
    u64::from_le_bytes(array(d, f))
}

/// `d[f]`, or an empty slice when `f` is out of range.
#[inline]
pub(crate) fn slice(d: &[u8], f: Field) -> &[u8] {
    d.get(f).unwrap_or(&[])
}

/// `d[f..]`, or an empty slice when `f` is past the end.
#[inline]
pub(crate) fn rest(d: &[u8], f: Rest) -> &[u8] {
    d.get(f).unwrap_or(&[])
}

/// `&mut d[f]`, or an empty slice when `f` is out of range.
#[inline]
pub(crate) fn slice_mut(d: &mut [u8], f: Field) -> &mut [u8] {
    d.get_mut(f).unwrap_or(&mut [])
}

/// `&mut d[f..]`, or an empty slice when `f` is past the end.
#[inline]
pub(crate) fn rest_mut(d: &mut [u8], f: Rest) -> &mut [u8] {
    d.get_mut(f).unwrap_or(&mut [])
}

/// Writes `v` at `i` when `i` is inside `d`.
#[inline]
pub(crate) fn set_u8(d: &mut [u8], i: usize, v: u8) {
    if let Some(b) = d.get_mut(i) {
        *b = v;
    }
}

/// Writes `v` over `f` when `f` is inside `d` and as long as `v`.
#[inline]
pub(crate) fn set_bytes(d: &mut [u8], f: Field, v: &[u8]) {
    if let Some(s) = d.get_mut(f) {
        if s.len() == v.len() {
            s.copy_from_slice(v);
        }
    }
}

/// Writes a big-endian u16 at `f`.
#[inline]
pub(crate) fn set_be16(d: &mut [u8], f: Field, v: u16) {
    set_bytes(d, f, &v.to_be_bytes())
}

/// Writes a big-endian u32 at `f`.
#[inline]
pub(crate) fn set_be32(d: &mut [u8], f: Field, v: u32) {
    set_bytes(d, f, &v.to_be_bytes())
}

/// Writes a little-endian u32 at `f`.
#[inline]
pub(crate) fn set_le32(d: &mut [u8], f: Field, v: u32) {
    set_bytes(d, f, &v.to_le_bytes())
}

/// Writes a little-endian u64 at `f`.
#[inline]
pub(crate) fn set_le64(d: &mut [u8], f: Field, v: u64) {
    set_bytes(d, f, &v.to_le_bytes())
}

/// Copies as much of `src` as fits into `dst`; returns the number of bytes copied.
#[inline]
pub(crate) fn copy_prefix(dst: &mut [u8], src: &[u8]) -> usize {
    let n = dst.len().min(src.len());
    if let (Some(d), Some(s)) = (dst.get_mut(..n), src.get(..n)) {
        d.copy_from_slice(s);
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn out_of_range_reads_are_zero_and_writes_are_dropped() {
        let mut d = [1u8, 2, 3];
        assert_eq!(be16(&d, 1..3), 0x0203);
        assert_eq!(be16(&d, 2..4), 0);
        assert_eq!(le64(&d, 0..8), 0);
        assert_eq!(u8_at(&d, 3), 0);
        assert!(slice(&d, 2..9).is_empty());
        assert!(rest(&d, 4..).is_empty());
        assert_eq!(rest(&d, 3..), &[] as &[u8]);
        set_be32(&mut d, 0..4, 0xdead_beef);
        set_u8(&mut d, 7, 9);
        set_bytes(&mut d, 0..2, &[7]);
        assert_eq!(d, [1, 2, 3]);
        set_be16(&mut d, 1..3, 0xabcd);
        assert_eq!(d, [1, 0xab, 0xcd]);
        assert!(slice_mut(&mut d, 2..5).is_empty());
        assert!(rest_mut(&mut d, 9..).is_empty());
        assert_eq!(copy_prefix(&mut d, &[9, 9, 9, 9, 9]), 3);
        assert_eq!(d, [9, 9, 9]);
        assert_eq!(copy_prefix(&mut d, &[5]), 1);
        assert_eq!(d, [5, 9, 9]);
    }
}
