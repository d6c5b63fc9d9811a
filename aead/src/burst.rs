//! A burst on the SIMD backends: the phases of RFC 8439 §2.8 for all lanes at once.
//!
//! Seal: (1) block 0 of every lane, the one-time Poly1305 keys; (2) every data block of every
//! lane, XORed in place; (3) Poly1305 over each lane's additional data and ciphertext; (4) the
//! final reduction and `+ s`, per lane. Open runs (1), (3) and (4) over the received ciphertext,
//! compares the tags in constant time, and runs (2) only for the lanes that matched.
//!
//! A burst of WireGuard's shape (one length, no additional data) takes the fused kernel instead
//! (`x86::wg_avx512`, `x86::wg_avx2`), and a mixed burst whose largest such class has 8 lanes or
//! more runs as two calls, the class on the fused kernel ([`major_class`]).

use subtle::ConstantTimeEq;
use zeroize::Zeroize;

use crate::plan::{aead_blocks, aead_pieces, split, PolyPlan};
use crate::portable::{finalize, tag_word};
use crate::sched::{data_jobs, key_jobs, Job, KeyTable};
use crate::x86::{self, Avx2, Avx512};
use crate::{Backend, Lane, MAX_LANES, TAG_LEN};

/// The CPU token of a SIMD backend.
#[derive(Clone, Copy)]
pub(crate) enum Simd {
    Avx512(Avx512),
    Avx2(Avx2),
}

impl Simd {
    /// The token for `backend`, if it is a SIMD one and this CPU runs it.
    pub fn new(backend: Backend) -> Option<Self> {
        match backend {
            Backend::Avx512 => Avx512::new().map(Simd::Avx512),
            Backend::Avx2 => Avx2::new().map(Simd::Avx2),
            Backend::Portable => None,
        }
    }

    /// XORs each job's key stream block into its destination.
    pub fn chacha<'a>(self, table: &KeyTable, jobs: impl Iterator<Item = Job<'a>>) {
        match self {
            Simd::Avx512(cpu) => x86::chacha_avx512(cpu, table, jobs),
            Simd::Avx2(cpu) => x86::chacha_avx2(cpu, table, jobs),
        }
    }

    /// Sub-lanes per Poly1305 vector, and the vector counts the kernel takes.
    pub fn poly_shape(self) -> (usize, &'static [usize]) {
        match self {
            Simd::Avx512(_) => (8, &x86::IFMA_GROUPS),
            Simd::Avx2(_) => (4, &x86::AVX2_GROUPS),
        }
    }

    /// The Poly1305 tags of the first `n` messages of `plan` (run in `groups` vectors), with the
    /// one-time keys in `otk` (`r || s` in the first 32 bytes of each).
    pub fn poly1305(
        self,
        plan: &PolyPlan<'_>,
        groups: usize,
        otk: &[[u8; 64]; MAX_LANES],
        n: usize,
    ) -> [[u8; TAG_LEN]; MAX_LANES] {
        let mut sub = match self {
            Simd::Avx512(cpu) => x86::poly_ifma(cpu, plan, otk, groups),
            Simd::Avx2(cpu) => x86::poly_avx2(cpu, plan, otk, groups),
        };
        let mut h = plan.combine(&sub);
        sub.as_flattened_mut().zeroize();
        let tags = match self {
            Simd::Avx512(cpu) => x86::finish_ifma(cpu, &h, otk, n),
            Simd::Avx2(_) => {
                let mut tags = [[0u8; TAG_LEN]; MAX_LANES];
                for ((tag, h), k) in tags.iter_mut().zip(h.iter()).zip(otk).take(n) {
                    let mut s = [0u64; 2];
                    for (s, c) in s.iter_mut().zip(k[16..32].chunks_exact(8)) {
                        *s = u64::from_le_bytes(c.try_into().unwrap_or([0; 8]));
                    }
                    *tag = finalize(*h, s);
                    s[..].zeroize();
                }
                tags
            }
        };
        h.as_flattened_mut().zeroize();
        tags
    }
}

/// Fills the key table of a burst.
#[inline]
fn fill_table(table: &mut KeyTable, lanes: &[Lane<'_>]) {
    table.fill(lanes.iter().map(|l| (l.key, &l.nonce)));
}

/// Block 0 of each lane's key stream: the one-time Poly1305 key `r || s` in its first 32 bytes.
/// Wiped on drop.
struct OneTimeKeys([[u8; 64]; MAX_LANES]);

impl Drop for OneTimeKeys {
    fn drop(&mut self) {
        self.0.as_flattened_mut().zeroize();
    }
}

/// Phase (1): the one-time keys of the lanes, block 0 of each.
#[inline]
fn one_time_keys(simd: Simd, table: &KeyTable, n: usize, otk: &mut OneTimeKeys) {
    simd.chacha(table, key_jobs(&mut otk.0[..n]));
}

/// Phase (3) and (4): the AEAD tags of the lanes over their current buffers.
#[inline]
fn tags(simd: Simd, lanes: &[Lane<'_>], otk: &OneTimeKeys) -> [[u8; TAG_LEN]; MAX_LANES] {
    let n = lanes.len().min(MAX_LANES);
    let mut blocks = [0usize; MAX_LANES];
    for (b, l) in blocks.iter_mut().zip(lanes) {
        *b = aead_blocks(l.aad.len(), l.buf.len());
    }
    let (width, groups) = simd.poly_shape();
    let split = split(&blocks[..n], width, groups);
    // The padded last blocks and the lengths: public (additional data, ciphertext), not wiped.
    let mut tails = [[[0u8; 16]; 3]; MAX_LANES];
    let mut plan = PolyPlan::new(split.steps);
    for ((l, t), k) in lanes.iter().zip(tails.iter_mut()).zip(split.k) {
        // Fits: `split` sized the steps and sub-lanes for these very blocks.
        let pushed = plan.push(&aead_pieces(l.aad, l.buf, t), k);
        debug_assert!(pushed);
    }
    simd.poly1305(&plan, split.groups, &otk.0, n)
}

/// Whether a burst is worth the fused WireGuard-shaped kernel (`x86::wg_len` checks the shape
/// itself): it runs every lane unsplit, one sub-lane each, so one long message alone can be
/// better spread by the general path over idle sub-lanes. Measured (the lanes bench's lane-count
/// line in a temporary edit, each path forced in turn; seal, ns per packet, general → fused): one lane of 1200 or 1420 bytes 1,297–1,306 →
/// 1,379–1,577, of 1024 about the same either way; two lanes of 1200 to 1420 about the same
/// (814–869 → 778–873); three 716–804 → 592–718, four 608–718 → 492–598, six 593–672 →
/// 418–491; with 2 to 7 lanes of 512 to 1024 bytes the fused kernel costs 8–37 % less per call,
/// one of 512 18 % less.
///
/// The AVX2 kernel (`x86::wg_avx2`), measured the same way on an AVX2-only AMD EPYC (1 to 4
/// lanes of 64, 512 and 1420 bytes, general → fused, ns per call): the fused one costs half at
/// 64 bytes (1,363–1,790 → 666–713 for 2 to 4 lanes; 1,437 → 659 for one), 19–53 % less at
/// 512, 10–20 % less for 2 to 4 lanes of 1420, and 8 % more for one lane of 1420 (2,319 →
/// 2,513): the same rule serves both.
#[inline]
fn fused(lanes: &[Lane<'_>]) -> bool {
    let len = lanes.first().map_or(0, |l| l.buf.len());
    lanes.len() >= 2 || len <= 768
}

/// The fewest lanes of one shape that a mixed burst's call runs apart, on the fused kernel.
const MAJOR_CLASS: u32 = 8;

/// A mixed burst's largest class of WireGuard's shape (no additional data, one length), as a
/// mask of its lanes, when it has at least [`MAJOR_CLASS`] lanes and is not the whole burst: a
/// bulk flow's full-size packets among a few others (acknowledgements, keepalives) go through
/// the fused kernel on their own, and the others through a second call, rather than all through
/// the general path.
fn major_class(lanes: &[Lane<'_>]) -> Option<u16> {
    let n = lanes.len().min(MAX_LANES);
    // Each lane's length, or none for a lane with additional data.
    let mut len = [usize::MAX; MAX_LANES];
    for (l, lane) in len.iter_mut().zip(lanes) {
        if lane.aad.is_empty() {
            *l = lane.buf.len();
        }
    }
    let (mut best, mut count) = (0u16, 0u32);
    // A class of `MAJOR_CLASS` or more has a lane among the first `n - MAJOR_CLASS + 1`; each
    // class is counted from its first lane on.
    for i in 0..(n + 1).saturating_sub(MAJOR_CLASS as usize) {
        if len[i] == usize::MAX {
            continue;
        }
        let mut mask = 0u16;
        for (j, &l) in len.iter().enumerate().take(n).skip(i) {
            mask |= u16::from(l == len[i]) << j;
        }
        if mask.count_ones() > count {
            (best, count) = (mask, mask.count_ones());
        }
    }
    (count >= MAJOR_CLASS && (count as usize) < n).then_some(best)
}

/// Puts the lanes of `mask` first and the others after them, each part in its order; returns
/// where each lane came from (`from[j]`: the position before of the lane now at `j`) and the
/// size of the first part.
fn class_first(lanes: &mut [Lane<'_>], mask: u16) -> ([u8; MAX_LANES], usize) {
    let n = lanes.len().min(MAX_LANES);
    let mut from = [0u8; MAX_LANES];
    let firsts = (0..n).filter(|i| mask >> i & 1 != 0);
    let others = (0..n).filter(|i| mask >> i & 1 == 0);
    for (f, i) in from.iter_mut().zip(firsts.chain(others)) {
        *f = i as u8;
    }
    permute(&mut lanes[..n], &from);
    (from, (mask.count_ones() as usize).min(n))
}

/// Undoes [`class_first`]: every lane back where it was.
fn restore(lanes: &mut [Lane<'_>], from: &[u8; MAX_LANES]) {
    let n = lanes.len().min(MAX_LANES);
    let mut to = [0u8; MAX_LANES];
    for (j, &f) in from.iter().enumerate().take(n) {
        to[f as usize] = j as u8;
    }
    permute(&mut lanes[..n], &to);
}

/// The lane at `j` becomes the one that was at `from[j]`, for a permutation `from` of
/// `0..lanes.len()`: each cycle walked once with swaps, carrying its first lane along.
fn permute(lanes: &mut [Lane<'_>], from: &[u8; MAX_LANES]) {
    let mut done = 0u16;
    for start in 0..lanes.len() {
        let mut j = start;
        while done >> j & 1 == 0 {
            done |= 1 << j;
            let f = from[j] as usize;
            if f == start {
                break;
            }
            lanes.swap(j, f);
            j = f;
        }
    }
}

/// Seals every lane (at most [`MAX_LANES`], lengths checked by the caller).
pub(crate) fn seal(backend: Backend, lanes: &mut [Lane<'_>]) {
    let Some(simd) = Simd::new(backend) else {
        // Not reached: `Lanes` takes a SIMD backend only when the CPU runs it.
        for l in lanes.iter_mut() {
            l.tag = crate::portable::seal(l.key, &l.nonce, l.aad, l.buf);
        }
        return;
    };
    if x86::wg_len(lanes).is_none() {
        if let Some(mask) = major_class(lanes) {
            let (from, k) = class_first(lanes, mask);
            seal(backend, &mut lanes[..k]);
            seal(backend, &mut lanes[k..]);
            restore(lanes, &from);
            return;
        }
    }
    let n = lanes.len().min(MAX_LANES);
    let mut table = KeyTable::zeroed();
    fill_table(&mut table, lanes);
    if fused(lanes) {
        let wg = match simd {
            Simd::Avx512(cpu) => x86::wg_seal_avx512(cpu, &table, lanes),
            Simd::Avx2(cpu) => x86::wg_seal_avx2(cpu, &table, lanes),
        };
        if let Some(mut tags) = wg {
            for (l, t) in lanes.iter_mut().zip(tags.iter()) {
                l.tag = *t;
            }
            tags.as_flattened_mut().zeroize();
            return;
        }
    }
    let mut otk = OneTimeKeys([[0u8; 64]; MAX_LANES]);
    one_time_keys(simd, &table, n, &mut otk);
    simd.chacha(&table, data_jobs(lanes, u16::MAX));
    let mut tags = tags(simd, &lanes[..n], &otk);
    for (l, t) in lanes.iter_mut().zip(tags.iter()) {
        l.tag = *t;
    }
    tags.as_flattened_mut().zeroize();
}

/// Opens every lane (at most [`MAX_LANES`], lengths checked by the caller); returns the mask of
/// lanes whose tag matched, the only ones decrypted.
pub(crate) fn open(backend: Backend, lanes: &mut [Lane<'_>]) -> u16 {
    let Some(simd) = Simd::new(backend) else {
        // Not reached: `Lanes` takes a SIMD backend only when the CPU runs it.
        let mut ok = 0;
        for (i, l) in lanes.iter_mut().enumerate() {
            ok |= u16::from(crate::portable::open(l.key, &l.nonce, l.aad, l.buf, &l.tag)) << i;
        }
        return ok;
    };
    if x86::wg_len(lanes).is_none() {
        if let Some(mask) = major_class(lanes) {
            let (from, k) = class_first(lanes, mask);
            let first = open(backend, &mut lanes[..k]);
            let rest = open(backend, &mut lanes[k..]);
            restore(lanes, &from);
            let both = u32::from(first) | u32::from(rest) << k;
            let mut ok = 0u16;
            for (j, &f) in from.iter().enumerate().take(lanes.len()) {
                ok |= ((both >> j & 1) as u16) << f;
            }
            return ok;
        }
    }
    let n = lanes.len().min(MAX_LANES);
    let mut table = KeyTable::zeroed();
    fill_table(&mut table, lanes);
    let wg = match simd {
        Simd::Avx512(cpu) if fused(lanes) => x86::wg_open_tags_avx512(cpu, &table, lanes),
        Simd::Avx2(cpu) if fused(lanes) => x86::wg_open_tags_avx2(cpu, &table, lanes),
        _ => None,
    };
    let mut expected = match wg {
        Some(t) => t,
        None => {
            let mut otk = OneTimeKeys([[0u8; 64]; MAX_LANES]);
            one_time_keys(simd, &table, n, &mut otk);
            tags(simd, &lanes[..n], &otk)
        }
    };
    // Each tag compared as one 128-bit word: one constant-time comparison per lane, not one
    // per byte (subtle's byte-slice comparison calls its non-inlined barrier for every byte).
    let mut ok = 0u16;
    for (i, (l, t)) in lanes.iter().zip(expected.iter()).enumerate() {
        ok |= u16::from(bool::from(tag_word(&l.tag).ct_eq(&tag_word(t)))) << i;
    }
    expected.as_flattened_mut().zeroize();
    match simd {
        Simd::Avx512(cpu) => x86::decrypt_avx512(cpu, &table, lanes, ok),
        Simd::Avx2(cpu) => x86::decrypt_avx2(cpu, &table, lanes, ok),
    }
    ok
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: [u8; 32] = [7; 32];

    /// A burst of lanes of `lens` (a lane of `None` has additional data and 64 bytes), each
    /// buffer's first byte its position.
    fn bufs(lens: &[Option<usize>]) -> Vec<Vec<u8>> {
        lens.iter().enumerate().map(|(i, l)| vec![i as u8; l.unwrap_or(64).max(1)]).collect()
    }

    fn burst<'a>(lens: &[Option<usize>], bufs: &'a mut [Vec<u8>]) -> Vec<Lane<'a>> {
        const AAD: [u8; 3] = [1, 2, 3];
        bufs.iter_mut()
            .zip(lens)
            .map(|(b, l)| {
                Lane::new(&KEY, [0; 12], if l.is_some() { &[] } else { &AAD }, &mut b[..l.unwrap_or(64).max(1)])
            })
            .collect()
    }

    fn mask(bits: &[usize]) -> u16 {
        bits.iter().fold(0, |m, &i| m | 1 << i)
    }

    #[test]
    fn the_major_class_is_the_largest_of_eight_or_more_and_never_the_whole_burst() {
        let l = |n: usize| Some(n);
        let cases: Vec<(Vec<Option<usize>>, Option<u16>)> = vec![
            // A bulk flow with acknowledgements.
            (
                [l(1420), l(1420), l(64), l(1420), l(1420), l(1420), l(64), l(1420), l(1420), l(1420), l(1420), l(48)]
                    .to_vec(),
                Some(mask(&[0, 1, 3, 4, 5, 7, 8, 9, 10])),
            ),
            // Uniform: no split (the fused kernel takes it whole).
            (vec![l(1420); 16], None),
            // Seven of a kind: too few.
            ([vec![l(1420); 7], vec![l(64); 5]].concat(), None),
            // Eight lanes in all: a class of 8 would be the whole burst.
            ([vec![l(100); 7], vec![l(64)]].concat(), None),
            // Additional data takes a lane out of the class.
            ([vec![l(64); 7], vec![None; 5], vec![l(64); 1]].concat(), Some(mask(&[0, 1, 2, 3, 4, 5, 6, 12]))),
            (vec![None; 16], None),
            // A tie: the class met first.
            ([vec![l(64); 8], vec![l(80); 8]].concat(), Some(0x00ff)),
            ([vec![l(80); 8], vec![l(64); 8]].concat(), Some(0x00ff)),
            // The class's first lane as late as it can be.
            ([vec![l(3)], vec![l(7); 8]].concat(), Some(0x01fe)),
            ([vec![l(1), l(2), l(3), l(4), l(5), l(6), l(7), l(8)], vec![l(9); 8]].concat(), Some(0xff00)),
        ];
        for (lens, want) in cases {
            let mut b = bufs(&lens);
            let lanes = burst(&lens, &mut b);
            assert_eq!(major_class(&lanes), want, "{lens:?}");
        }
    }

    #[test]
    fn class_first_keeps_each_part_in_order_and_restore_puts_every_lane_back() {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for n in 1..=MAX_LANES {
            for _ in 0..200 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let m = (x as u16) & (((1u32 << n) - 1) as u16);
                let lens = vec![Some(16); n];
                let mut b = bufs(&lens);
                let mut lanes = burst(&lens, &mut b);
                let (from, k) = class_first(&mut lanes, m);
                let firsts: Vec<u8> = (0..n as u8).filter(|i| m >> i & 1 != 0).collect();
                let others: Vec<u8> = (0..n as u8).filter(|i| m >> i & 1 == 0).collect();
                let now: Vec<u8> = lanes.iter().map(|l| l.buf[0]).collect();
                assert_eq!(k, firsts.len());
                assert_eq!(now, [firsts, others].concat(), "n {n}, mask {m:#x}");
                assert_eq!(now, from[..n].to_vec(), "`from` says where each lane came from");
                restore(&mut lanes, &from);
                let back: Vec<u8> = lanes.iter().map(|l| l.buf[0]).collect();
                assert_eq!(back, (0..n as u8).collect::<Vec<_>>(), "n {n}, mask {m:#x}");
            }
        }
    }
}
